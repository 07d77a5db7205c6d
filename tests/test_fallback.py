"""How many inputs may fall back before a run fails, and what the failure says."""

import pytest

from lumbar.core.fallback import FallbackLimitError, check_fallbacks, fallback_limit


def test_limit_is_a_share_of_the_inputs_but_never_below_one():
    assert fallback_limit(100, 0.05) == 5
    assert fallback_limit(119, 0.05) == 5  # floor: 5.95 studies are not 6
    assert fallback_limit(3, 0.05) == 1  # one odd study of a tiny test set is survivable
    assert fallback_limit(0, 0.05) == 1
    assert fallback_limit(10, 1.0) == 10
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        fallback_limit(10, 5)


def test_check_names_every_fallback_with_its_reason_past_the_limit():
    check_fallbacks({1: "no Sagittal T1 series"}, total=3, share=0.05, what="studies")  # at the limit: fine
    with pytest.raises(FallbackLimitError) as info:
        check_fallbacks({11: "unreadable", 7: "no crop"}, total=3, share=0.05, what="studies")
    text = str(info.value)
    assert text.startswith("2 of 3 studies fell back, more than the 1 allowed (share 0.05)")
    assert text.index("  11: unreadable") > text.index("  7: no crop")  # listed in order, each with why
    many = {i: "x" for i in range(25)}
    with pytest.raises(FallbackLimitError, match=r"and 5 more$"):
        check_fallbacks(many, total=25, share=0.0, what="studies")
