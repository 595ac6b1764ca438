import json

import pytest

from dyninfer import ConfigError
from dyninfer.io import atomic_dir, atomic_path, write_json
from dyninfer.registry import Registry, check_keys


def test_registry_rejects_duplicates_and_lists_by_pattern():
    r = Registry("thing")
    r.register("a-1", 1)

    @r.register("b-2")
    def f():
        return 2

    assert r.get("b-2") is f
    assert r.names("a-*") == ["a-1"]
    with pytest.raises(ConfigError, match="already registered"):
        r.register("a-1", 3)
    with pytest.raises(ConfigError, match="unknown thing 'zz'; known: a-1, b-2"):
        r.get("zz")


def test_check_keys_names_unknown_keys():
    check_keys("Cfg", {"a": 1}, {"a", "b"})
    with pytest.raises(ConfigError, match=r"unknown Cfg keys \['c'\]"):
        check_keys("Cfg", {"a": 1, "c": 2}, {"a", "b"})


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "r.json"
    write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_atomic_dir_replaces_whole_or_nothing(tmp_path):
    out = tmp_path / "report"
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "b.txt").write_text("2")
            raise RuntimeError("crash")
    assert sorted(x.name for x in out.iterdir()) == ["a.txt"]
    with atomic_dir(out) as d:
        (d / "c.txt").write_text("3")
    assert sorted(x.name for x in out.iterdir()) == ["c.txt"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report"]
