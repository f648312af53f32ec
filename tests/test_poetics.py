"""Poetics on hand-checked real poems: known forms, rhymes and 平仄 faults."""

import json

import pytest

from tangshi.poetics import (
    PING,
    ZE,
    _pingshui_json,
    detect_form,
    is_rhyme_position,
    pattern,
    phonology,
    poetics_metrics,
    repeats_rhyme,
    rhyme_category,
    rhyme_chars,
    rhyme_indices,
    rhymes,
    score_poem,
    split_lines,
    tone_rules,
)

DENG_GUAN_QUE = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"  # 王之涣: 尤 rhyme, regular tones
CHUN_WANG = (
    "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。"  # 杜甫, 侵
)
JING_YE_SI = "床前看月光，疑是地上霜。举头望山月，低头思故乡。"  # 李白: rhymes (阳) but a 古绝, tones not regular
JIANG_XUE = "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。"  # 柳宗元: rhymes on an entering (仄) tone
ZAO_FA = "朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。"  # 李白, 删


def test_phonology_reads_pingshui_in_simplified_characters():
    p = phonology()
    assert p.rhymes["东"] == {"上平声一东"} and p.tone("东") == {PING}
    assert p.tone("看") == {PING, ZE}  # read in either tone
    assert p.tone("发") == {ZE} and "发" not in p.rhymes  # 發 and 髮, both entering tone
    assert p.categories("流") & p.categories("楼") and not p.categories("流") & p.categories("山")
    assert "啼" not in json.dumps(_pingshui_json(), ensure_ascii=False)  # not in the table: read ti2, level
    assert p.tone("啼") == {PING}


@pytest.mark.parametrize(
    ("poem", "form"),
    [
        (DENG_GUAN_QUE, "wuyan_jueju"),
        (CHUN_WANG, "wuyan_lvshi"),
        (ZAO_FA, "qiyan_jueju"),
        ("床前看月光，疑是地上霜。", None),
        ("白日依山尽，黄河入海流，欲穷千里目，更上一层楼，", None),
    ],
)
def test_detect_form(poem, form):
    assert detect_form(poem) == form


def test_rhyme_by_pingshui_level_tone_category():
    assert rhymes(DENG_GUAN_QUE) and rhymes(CHUN_WANG) and rhymes(ZAO_FA) and rhymes(JING_YE_SI)
    assert not rhymes(JIANG_XUE)  # 灭/雪 rhyme, but in the entering tone
    assert not rhymes("白日依山尽，黄河入海流。欲穷千里目，更上一层山。")


def test_tone_rules_on_regular_and_irregular_poems():
    assert all(tone_rules(CHUN_WANG).values())
    assert all(tone_rules(DENG_GUAN_QUE).values())
    assert all(tone_rules(ZAO_FA).values())
    rules = tone_rules(JING_YE_SI)
    assert not rules["alternation"]  # 床前看月光: 前 and 月 … 疑是地上霜: 是 and 上 both oblique
    assert rules["level_rhyme"]
    assert tone_rules("床前看月光") is None


def test_three_level_tail_and_lone_level_are_caught():
    # line 2 黄河东西流 ends 东西流, three level tones (三平尾)
    three = "白日依山尽，黄河东西流。欲穷千里目，更上一层楼。"
    assert not tone_rules(three)["no_three_level_tail"]
    # 孤平: line 4 夜孤月落楼 is 仄平仄仄平, its one level tone besides the rhyme stands alone
    lone = "白日依山尽，黄河入海流。欲穷千里目，夜孤月落楼。"
    assert not tone_rules(lone)["no_lone_level"]
    assert tone_rules(DENG_GUAN_QUE)["no_lone_level"]
    # 七言 by its last five characters: 春月落花夜入山 is 平仄仄平仄仄平, whose tail 落花夜入山 (仄平仄仄平)
    # is 孤平 although 春 is a second level tone; 轻舟已过万重山 (平平仄仄仄平平) is regular
    phon = phonology()
    assert [phon.tone(c) for c in "春月落花夜入山"] == [{PING}, {ZE}, {ZE}, {PING}, {ZE}, {ZE}, {PING}]
    assert not tone_rules(ZAO_FA.replace("轻舟已过万重山", "春月落花夜入山"))["no_lone_level"]
    assert tone_rules(ZAO_FA)["no_lone_level"]


def test_scores_and_set_metrics():
    s = score_poem(CHUN_WANG)
    assert s == {
        "form": "wuyan_lvshi",
        "rhymes": True,
        "tone_rules": tone_rules(CHUN_WANG),
        "tone_ok": True,
        "repeated_line": False,
        "repeated_chars": 0.0,
        "repeated_rhyme": False,
        "doubled_char": False,
    }
    # 离离 doubles a character; 离 and 一 each come back once: 2 of 20 characters repeat an earlier one
    grass = score_poem("离离原上草，一岁一枯荣。野火烧不尽，春风吹又生。")
    assert grass["repeated_chars"] == 0.1 and grass["doubled_char"]
    repeated = "白日依山尽，白日依山尽。白日依山尽，白日依山尽。"
    m = poetics_metrics([DENG_GUAN_QUE, repeated, "不是诗"], train_lines={"白日依山尽"}, train_bodies={DENG_GUAN_QUE})
    assert m["well_formed"] == pytest.approx(2 / 3)
    assert m["rhyme"] == pytest.approx(1 / 2)
    assert m["repeated_line"] == pytest.approx(1 / 3)
    assert m["copied_poems"] == pytest.approx(1 / 3)
    assert m["copied_lines"] == pytest.approx(5 / 9)  # 5 of 9 lines are 白日依山尽 (不是诗 counts as one line)
    assert m["distinct_1"] == pytest.approx(len(set("白日依山尽黄河入海流欲穷千里目更上一层楼不是诗")) / 43)


# Well-known poems with their rhyme characters and 平水韵 categories, written here by hand from the rhyme books
# (not read from the table the checker uses). None: the even lines rhyme in an oblique (仄) tone, which regular
# verse does not, so the level-tone checker must say no.
KNOWN = [
    ("静夜思", "床前明月光，疑是地上霜。举头望明月，低头思故乡。", "霜乡", "下平声七阳"),
    ("登鹳雀楼", DENG_GUAN_QUE, "流楼", "下平声十一尤"),
    ("相思", "红豆生南国，春来发几枝。愿君多采撷，此物最相思。", "枝思", "上平声四支"),
    ("早发白帝城", ZAO_FA, "还山", "上平声十五删"),
    ("出塞", "秦时明月汉时关，万里长征人未还。但使龙城飞将在，不教胡马度阴山。", "还山", "上平声十五删"),
    ("凉州词", "葡萄美酒夜光杯，欲饮琵琶马上催。醉卧沙场君莫笑，古来征战几人回。", "催回", "上平声十灰"),
    ("枫桥夜泊", "月落乌啼霜满天，江枫渔火对愁眠。姑苏城外寒山寺，夜半钟声到客船。", "眠船", "下平声一先"),
    (
        "黄鹤楼送孟浩然之广陵",
        "故人西辞黄鹤楼，烟花三月下扬州。孤帆远影碧空尽，唯见长江天际流。",
        "州流",
        "下平声十一尤",
    ),
    ("春望", CHUN_WANG, "深心金簪", "下平声十二侵"),
    ("台城", "江雨霏霏江草齐，六朝如梦鸟空啼。无情最是台城柳，依旧烟笼十里堤。", "啼堤", "上平声八齐"),
    ("春晓", "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。", "鸟少", None),
    ("寻隐者不遇", "松下问童子，言师采药去。只在此山中，云深不知处。", "去处", None),
    ("鹿柴", "空山不见人，但闻人语响。返景入深林，复照青苔上。", "响上", None),
    ("悯农", "锄禾日当午，汗滴禾下土。谁知盘中餐，粒粒皆辛苦。", "土苦", None),
    ("江雪", JIANG_XUE, "灭雪", None),
]


@pytest.mark.parametrize(("title", "poem", "chars", "category"), KNOWN, ids=[k[0] for k in KNOWN])
def test_the_checker_agrees_with_known_rhymes(title, poem, chars, category):
    assert "".join(rhyme_chars(poem)) == chars
    assert rhymes(poem) == (category is not None)
    if category:
        assert category in rhyme_category(poem)


def test_an_echoed_rhyme_character_is_not_a_rhyme():
    echo = "国破山河在，城春草木深。感时花溅泪，恨别鸟惊深。"  # 深 … 深: one category, but the same character
    assert rhyme_category(echo) and repeats_rhyme(echo) and not rhymes(echo)
    m = poetics_metrics([echo, DENG_GUAN_QUE])
    assert m["rhyme"] == 0.5 and m["repeated_rhyme"] == 0.5 and m["rhymed_n"] == 1 and m["well_formed_n"] == 2


def test_a_character_missing_from_the_table_rhymes_where_its_reading_agrees():
    # 啼 (a 齐 character) and 堤 are missing from the package's table; most table characters read ti2 or di1
    # are 齐, so they rhyme there, as the rhyme books have them. 疎 (shu1) is as often 鱼 as 虞: no category.
    phon = phonology()
    assert "上平声八齐" in phon.categories("啼") and "上平声八齐" in phon.categories("堤")
    assert phon.categories("疎") == frozenset() and phon.tone("疎") == {PING}
    assert not rhyme_category("白日依山尽，黄河入海疎。欲穷千里目，更上一层书。")


def _tones(line: str) -> dict[int, str]:
    return {i: PING if c == "平" else ZE for i, c in enumerate(line) if c in "平仄"}


@pytest.mark.parametrize(
    ("form", "opening", "lines"),
    [
        # 王力《汉语诗律学》's regular patterns, written out by hand; 中 marks a free position (not a key one)
        ("wuyan_jueju", ZE, ["中仄中平中", "中平中仄平", "中平中仄中", "中仄中平平"]),  # 仄起: 仄仄平平仄 …
        ("wuyan_jueju", PING, ["中平中仄中", "中仄中平平", "中仄中平中", "中平中仄平"]),  # 平起: 平平平仄仄 …
        ("qiyan_jueju", PING, ["中平中仄中平中", "中仄中平中仄平", "中仄中平中仄中", "中平中仄中平平"]),
    ],
)
def test_the_tone_pattern_is_the_regular_one(form, opening, lines):
    assert pattern(form, opening) == [_tones(line) for line in lines]


def test_a_real_regular_poem_keeps_its_pattern():
    # 春望 opens 仄 (破) and keeps every rule: each key position and rhyme has the tone the pattern wants
    phon = phonology()
    chars = [t for t, _ in split_lines(CHUN_WANG)]
    for line, wants in zip(chars, pattern("wuyan_lvshi", ZE), strict=True):
        for col, tone in wants.items():
            assert tone in phon.tone(line[col]), (line, col)


def test_rhyme_positions_of_known_poems():
    assert rhyme_indices(DENG_GUAN_QUE) == [10, 22] and [DENG_GUAN_QUE[i] for i in (10, 22)] == ["流", "楼"]
    assert "".join(CHUN_WANG[i] for i in rhyme_indices(CHUN_WANG)) == "深心金簪"
    assert rhyme_indices("白日依山尽，黄河入海") == []  # an unclosed second line has no rhyme position yet
    assert [is_rhyme_position(line, 6, 7) for line in range(4)] == [False, True, False, True]
