"""Caption rules of A.1 steps 4-8 and the academic tags, case by case with the reason asserted."""
import pytest

from filters.language import LanguageRule, LanguageTagger
from filters.text_rules import AcademicTags, EnglishChineseOnly, PatternCleaner, TextLength, \
    clean_html, emoji_in, html_cleaner, no_emoji, word_count
from conftest import make_sample


def text(t):
    return make_sample(text=t)


@pytest.mark.parametrize("caption", [
    "a red kite over a field", "一只小狗在草地上奔跑", "猫咪（橘色）在窗台上。", "Nike® shoes ™ ©2020",
    "“quoted” — dash… and 3×4 at 20°", "mixed 中文 and English", "tab\tand\nnewline",
    "full-width ＡＢＣ１２３", "emoji are left to step 5 😀",
    # symbols of no script, as product and recipe captions use them
    "a vintage lamp, £25 or €29", "¥100 coin", "bake at 180℃ ±5", "a ½ inch pipe, 2² × 3³",
    "route A → B ≤ 5 km", "第Ⅱ期 ★★★☆ ■ 新品", "a 3 µm chip § 4"])
def test_english_chinese_only_keeps(caption):
    assert EnglishChineseOnly()(text(caption)) is None


@pytest.mark.parametrize("caption", [
    "Café au lait", "naïve", "Москва", "日本語のテキスト", "한국어", "العربية", "Ελληνικά",
    "Zürich", "ẞ", "\u200b zero width"])
def test_english_chinese_only_drops(caption):
    assert EnglishChineseOnly()(text(caption)) == "non_en_zh_characters"


def test_accented_latin_is_a_choice():
    rule = EnglishChineseOnly(allow_accented_latin=True)
    assert rule(text("Café au lait")) is None
    assert rule(text("Zürich")) is None
    assert rule(text("Москва")) == "non_en_zh_characters"
    assert rule(text("Łódź")) == "non_en_zh_characters"  # Latin Extended-A is not Latin-1


def test_emoji_rule():
    assert no_emoji(text("party time 🎉")) == "emoji"
    assert no_emoji(text("thumbs 👍🏽")) == "emoji"
    assert no_emoji(text("flag 🇫🇷")) == "emoji"
    assert no_emoji(text("keycap 1️⃣")) == "emoji"
    assert no_emoji(text("sun ☀ symbol")) == "emoji"
    assert no_emoji(text("a plain caption")) is None
    assert no_emoji(text("中文标题")) is None


def test_copyright_registered_trademark_are_not_emoji():
    assert emoji_in("Nike® Air ™ © 2020") == []
    assert no_emoji(text("Nike® Air ™ © 2020")) is None
    # With the emoji variation selector they are drawn as emoji, and count as one.
    assert no_emoji(text("Nike®\ufe0f")) == "emoji"


def test_length_in_characters_chinese_per_character():
    rule = TextLength(5, 20)
    assert rule(text("dog")) == "text_too_short"
    assert rule(text("a dog")) is None
    assert rule(text("一只小狗跑")) is None  # five Chinese characters are five characters
    assert rule(text("一只狗")) == "text_too_short"
    assert rule(text("x" * 21)) == "text_too_long"
    assert TextLength(1, 100, suffix="_after_cleaning")(text("")) == "text_too_short_after_cleaning"


def test_length_in_words():
    assert word_count("a dog runs") == 3
    assert word_count("一只狗 runs") == 4
    rule = TextLength(1, 1000, min_words=3, max_words=5)
    assert rule(text("two words")) == "text_too_short"
    assert rule(text("one two three four five six")) == "text_too_long"
    assert rule(text("一只小狗")) is None


def test_clean_html():
    assert clean_html("<b>Fresh</b> strawberries &amp; cream<br/>on a plate") == \
        "Fresh strawberries & cream on a plate"
    assert clean_html("<script>var x = 1;</script>Hello <!-- note --> world") == "Hello world"
    assert clean_html("double &amp;amp; escaped &nbsp; space") == "double & escaped space"
    assert clean_html('<a href="x>y">link</a> text') == "link text"
    # Not HTML: CC12M's placeholder, "less than" signs, emoticons.
    assert clean_html("<PERSON> at 3 < 5 <3") == "<PERSON> at 3 < 5 <3"
    assert clean_html("<p>one</p><p>two</p>", keep_newlines=True) == "one\n\ntwo"
    # Characters that draw nothing go with the whitespace: a zero-width space, a soft hyphen.
    assert clean_html("zero\u200bwidth soft\u00adhyphen &nbsp;") == "zerowidth softhyphen"


def test_a_caption_keeps_no_invisible_characters(tmp_path):
    """A caption file saved with a byte-order mark, or web text with zero-width spaces and
    direction marks, reads as what it shows: the script rule sees the visible text, and the
    original keeps the characters as they came."""
    from corpus.samples.pairs import make_photo
    from filters.base import Reject, apply_rules
    from pipelines.pairs import InputFile, PairReader, PairsConfig, text_rules

    reader = PairReader("unit", PairsConfig())
    folder = InputFile(str(tmp_path), "t")
    raw = "\ufeffa red kite\u200b over the sea\u200e at noon"
    sample = reader.make_sample(folder, "k", make_photo(300, 300), raw.encode("utf-8"), {})
    assert sample.text == "a red kite over the sea at noon"
    assert sample.original_text == raw
    kept = apply_rules(sample, text_rules(PairsConfig().text))
    assert not isinstance(kept, Reject), kept


def test_html_cleaner_rule():
    cleaned = html_cleaner(text("<i>Sunset</i> over&nbsp;the sea"))
    assert cleaned.text == "Sunset over the sea"
    assert cleaned.decisions == ["html_cleaned"]
    assert html_cleaner(text("a plain caption")) is None
    assert html_cleaner(text("<div><img src='x.jpg'/></div>&nbsp;")) == "empty_after_html_cleaning"


@pytest.mark.parametrize("caption,expected,applied", [
    ("see https://example.com/a?b=1 for more", "see for more", ["url"]),
    ("visit www.example.com today", "visit today", ["url"]),
    ("mail me: someone@example.org please", "mail me: please", ["email"]),
    ("sunset IMG_0001.JPG", "sunset", ["file_name"]),
    ("beach DSC_2481 in summer", "beach in summer", ["camera_file_name"]),
    ("PXL_20230101_123456 the park", "the park", ["camera_file_name"]),
    ("wow!!!!! amazing???", "wow! amazing?", ["repeated_punctuation"]),
    ("and then.......", "and then...", ["long_ellipsis"]),
    ("| Home decor - ", "Home decor", ["dangling_separators"]),
])
def test_pattern_cleaner(caption, expected, applied):
    cleaner = PatternCleaner.from_names(["url", "email", "file_name", "camera_file_name",
                                         "repeated_punctuation", "long_ellipsis",
                                         "dangling_separators"])
    result = cleaner(text(caption))
    assert result.text == expected
    assert result.decisions == [f"removed_{name}" for name in applied]


def test_pattern_cleaner_drops_file_name_captions():
    cleaner = PatternCleaner.from_names(["file_name", "camera_file_name", "dangling_separators"])
    assert cleaner(text("DSC_2481.JPG")) == "empty_after_pattern_cleaning"
    assert cleaner(text("IMG_0001")) == "empty_after_pattern_cleaning"
    assert cleaner(text("a quiet street")) is None


def test_pattern_cleaner_custom_and_unknown():
    cleaner = PatternCleaner.from_names(["dangling_separators"], [
        {"name": "stock", "regex": r"\bstock (photo|image)\b"}])
    result = cleaner(text("mountain lake - stock photo"))
    assert result.text == "mountain lake"
    assert result.decisions == ["removed_stock", "removed_dangling_separators"]
    with pytest.raises(ValueError, match="unknown pattern"):
        PatternCleaner.from_names(["no_such_pattern"])


def test_academic_tags():
    rule = AcademicTags([r"<\s*PERSON\s*>", r"<\s*[A-Z][A-Z_]{2,}\s*>"])
    assert rule(text("<PERSON> walks the dog")) == "academic_special_tag"
    assert rule(text("photo by < PERSON >")) == "academic_special_tag"
    assert rule(text("the <LOCATION> skyline")) == "academic_special_tag"
    assert rule(text("3 < 5 and a <3 heart")) is None
    assert AcademicTags([])(text("<PERSON> here")) is None


def test_language_tagging_and_requirement():
    tagger = LanguageTagger()
    languages = [lang for lang, _ in tagger.predict(
        ["a dog running on the beach", "一只小狗在草地上奔跑", "上海外滩夜景", "Das ist ein Haus"])]
    assert languages == ["en", "zh", "zh", "de"]
    tagged = LanguageRule(None)(text("a dog running on the beach"))
    assert tagged.language == "en" and 0 < tagged.language_score <= 1
    rule = LanguageRule(["en", "zh"])
    assert rule(text("Das ist ein schönes Haus am See")) == "language_not_allowed"
    assert rule(text("猫咪在窗台上晒太阳")).language == "zh"
    assert LanguageRule(["en"], min_score=0.999)(text("a dog")) == "language_uncertain"
