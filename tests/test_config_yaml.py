"""The config file's YAML loader (streamer.config_yaml): keys once, merges as the YAML spec
means them, bounds on what aliases expand to, and nothing but its own error escaping."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from streamer.config import load_config
from streamer.config_yaml import YamlError, load_yaml
from streamer.errors import ConfigError
from tests.conftest import REPO


def test_merges_follow_the_spec() -> None:
    """The mapping's own keys win, then the merged mappings in the order given (PyYAML 6.0.4
    takes the last for keys of two characters or more: yaml/pyyaml#953); a merged mapping
    that was itself built with a merge keeps its own key; a mapping may merge itself."""
    text = (
        "night: &night {mask_opacity: 0.9}\n"
        "base: &base {mask_opacity: 0.2, background_color: '#000000'}\n"
        "crop: {<<: [*night, *base]}\n"
        "own: {<<: [*night, *base], mask_opacity: 0.5}\n"
        "a: &a {<<: {x: 1}, x: 2}\n"
        "c: {<<: *a}\n"
        "m: &m {<<: *m, k: 1}\n"
        "=: plain\n"
    )
    data = load_yaml(text)
    assert data["crop"] == {"mask_opacity": 0.9, "background_color": "#000000"}
    assert data["own"]["mask_opacity"] == 0.5
    assert data["c"] == {"x": 2}
    assert data["m"] == {"k": 1}
    assert data["="] == "plain"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a: 1\nb: 2\na: 3\n", r"key 'a' given twice\n.*line 3, column 1"),
        ("a: &x {k: 1, k: 2}\n", "key 'k' given twice"),
        ("a: {<<: {k: 1}, k: 2, k: 3}\n", "key 'k' given twice"),  # (its own, twice)
        ("a: {<<: 3}\n", "expected a mapping .* to merge, but found ScalarNode"),
        ("a: {<<: {k: 1}, <<: {k: 2}}\n", "key '<<' given twice"),
        ("a: !!bool maybe\n", r"cannot read \(KeyError: 'maybe'\)"),
        ("a: !!timestamp foo\n", r"cannot read \(AttributeError"),
        ("a: !!int ''\n", r"cannot read \(IndexError"),
        ("a: 2024-02-30\n", "day is out of range for month"),
        ("[" * 100_000, "nested too deep"),
        ("x: &r\n  again: *r\n", "nested deeper than 64 levels \\(counting what aliases"),
        ("x: &y [" + ", ".join(["*y"] * 1000) + "]\n", "nested deeper than 64 levels"),
        (f"x: [&s {'x' * 100_000}{', *s' * 50}]\n", "more than 4,000,000 characters of text"),
        (f"x: [&b !!binary {'QUFB' * 25_000}{', *b' * 60}]\n", "more than 4,000,000 characters"),
        ("r: &r !!pairs [{k: *r}]\n", "nested deeper than 64 levels"),  # (tuples walked too)
        ("a: {? !!str {=: k} : 1, k: 2}\n", "key 'k' given twice"),  # (a key built as "k")
        ("x: " + "1:" * 200 + "1\n", "a number longer than 100 characters"),
        ("x: [" + "1, " * 250_000 + "]\n", "more than 200,000 values written out"),
    ],
)
def test_what_is_refused_and_why(text: str, why: str) -> None:
    with pytest.raises(YamlError, match=why):
        load_yaml(text)


def test_expansion_is_refused_in_time_and_memory_bounded_by_the_file() -> None:
    """Aliases of aliases (a billion values from 1 KB), a 1-MB list of itself, a chain of
    merges each adding to the last, one mapping merged 300 times (what a merge looks at costs
    though it takes nothing: 15 s for 10,000 times 10,000 when only what was taken counted):
    refused at their bound, each within seconds; the walk holds no more than the bound (the
    1-MB list took over 1 GB when it counted late)."""
    laughs = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    chain = ["a0: &a0 {k0: 1}"]
    chain += [f"a{i}: &a{i} {{<<: *a{i - 1}, k{i}: 1}}" for i in range(1, 2000)]
    wide = "m: &m {" + ", ".join(f"k{i}: 1" for i in range(1000)) + "}\n"
    wide += "c: {<<: [" + ", ".join(["*m"] * 300) + "]}\n"  # (the same keys, looked at again)
    mlaughs = ["m0: &m0 {" + ", ".join(f"k{j}: x" for j in range(10)) + "}"]
    mlaughs += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 30)]
    for text, why in [
        ("\n".join(laughs), "more than 200,000 values"),
        # (150,000 aliases: under the nodes read, over the values they stand for)
        ("x: &y [" + ", ".join(["*y"] * 150_000) + "]\n", "values \\(counting what aliases"),
        ("\n".join(chain), "merges bring more than 200,000 values"),
        (wide, "merges bring more than 200,000 values"),
    ]:
        start = time.monotonic()
        with pytest.raises(YamlError, match=why):
            load_yaml(text)
        assert time.monotonic() - start < 30, why  # (a bound on a hang, not a benchmark)
    assert len(load_yaml("\n".join(mlaughs))["m29"]) == 10  # (merges of one map: its keys once)


def test_a_mutated_config_gives_a_config_or_its_error_and_nothing_else(tmp_path: Path) -> None:
    """Fuzzing: the example config with YAML's syntax characters inserted, deleted and swapped
    at random (a fixed seed, 3,000 files): load_config returns a config or raises ConfigError,
    never anything else (a traceback from `check-config`)."""
    original = (REPO / "configs" / "example.yaml").read_text()
    syntax = [*":-[]{},&*!<>|'\"#%@` \n\t", "<<: *", "!!bool ", "!!int ", "&a ", "*a"]
    rng = random.Random(15)
    path = tmp_path / "c.yaml"
    loaded = refused = 0
    for _ in range(3000):
        text = original
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                text = text[:at] + rng.choice(syntax) + text[at:]
            elif op < 0.8:
                text = text[:at] + text[at + rng.randint(1, 3) :]
            else:
                other = rng.randrange(len(text))
                text = text[:at] + text[other : other + 8] + text[at:]
        path.write_text(text)
        try:
            load_config(path)
            loaded += 1
        except ConfigError:
            refused += 1
    assert loaded > 100 and refused > 100, (loaded, refused)
