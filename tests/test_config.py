from tangshi.config import quote_non_ascii


def test_non_ascii_override_values_are_quoted_for_hydra():
    argv = ["s.py", "begin=日", "data.path=/d/全唐诗", "n=5", "-m", "begin=春,秋", "x='已引'", "model.cell=gru"]
    assert quote_non_ascii(argv) == [
        "s.py",
        "begin='日'",
        "data.path='/d/全唐诗'",
        "n=5",
        "-m",
        "begin='春','秋'",
        "x='已引'",
        "model.cell=gru",
    ]
