"""The texts the load tools speak: everyday assistant and support replies, ~25 s of audio each.

Varied in length and punctuation so that listeners arrive at different sentence
boundaries; shared by ``client.load`` and the engine's raw-limit measurement.
"""

from __future__ import annotations

from typing import Final

TEXTS: Final = (
    "Thank you for calling the support line. I can see that your order left our warehouse "
    "on Tuesday morning, and the carrier expects to deliver it by Friday afternoon. If you "
    "are not at home, the driver will leave a card with a number to call, and you can pick "
    "the parcel up from the nearest depot on any weekday between nine and five. You will "
    "also get a text message with a tracking link the evening before, so you can choose a "
    "different day or ask us to leave it with a neighbour.",
    "The weather service expects a cold front to move across the region tonight. Tomorrow "
    "will start cloudy with scattered showers, clearing by midday, with highs around twelve "
    "degrees. Winds from the north west will be strong near the coast, so ferry services may "
    "be delayed, and drivers should take care on exposed roads and bridges. The weekend looks "
    "calmer, with sunny spells on Saturday, light winds, and a chance of frost in sheltered "
    "valleys early on Sunday morning before temperatures recover.",
    "Before we change anything on your account, I need to confirm a few details. Could you "
    "tell me the postal code on your billing address, and the last four digits of the card "
    "you used for your most recent payment? Once that is done, I can update the plan, and the "
    "new price will apply from the first day of next month. You will receive a confirmation "
    "email within the hour, and if anything in it looks wrong, just reply to that message and "
    "a member of the team will call you back.",
    "Here is a quick summary of today's meeting. The design team will finish the prototype "
    "by the end of the week. Marketing needs the final screenshots on Monday, and the launch "
    "date stays on the twentieth. Anyone who has concerns about the schedule should raise "
    "them with the project lead before Thursday's review. The budget numbers will be "
    "shared on Wednesday, together with the hiring plan for the next quarter, and the office "
    "will be closed on Friday afternoon for the move to the new floor.",
    "To reset your router, first unplug it from the wall and wait about thirty seconds. Then "
    "plug it back in and wait until the light on the front turns steady green, which can take "
    "up to two minutes. If the light keeps blinking orange, press and hold the small button "
    "on the back for ten seconds, and then set up your network again. The name and password "
    "of your network are printed on the sticker underneath the router, and if none of this "
    "helps, we can send an engineer to your home.",
    "Our museum is open every day except Monday, from ten in the morning until six in the "
    "evening. On the first Friday of each month we stay open late, until nine, and entry is "
    "free after five. Guided tours leave from the main hall every hour, and the cafe on the "
    "second floor serves lunch until half past three. This season's special exhibition "
    "covers three hundred years of maps and travel writing, and the children's workshop "
    "on Saturday mornings teaches young visitors how to draw a map of their own street.",
    "I have found two flights that match your search. The first leaves at seven fifteen and "
    "arrives just after ten, with one stop. The second is a direct flight at eleven thirty, "
    "arriving at one forty, but it costs about sixty dollars more. Both include one checked "
    "bag, and seats can be chosen for free during online check in. Shall I hold the direct "
    "flight for you? The fare is guaranteed for twenty four hours, and after that it may "
    "change, because only a few seats are left at this price.",
    "Your prescription is ready for collection at the pharmacy on Station Road. Please bring "
    "a photo identity card and the reference number from your text message. If someone else "
    "is collecting it for you, they will need a signed note from you as well. The pharmacy "
    "closes at eight tonight and opens again at nine tomorrow. If you have any questions "
    "about the new dose, the pharmacist can talk them through with you in the private room, "
    "and there is no need to book an appointment for that.",
)
