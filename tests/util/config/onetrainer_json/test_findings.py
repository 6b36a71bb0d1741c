"""The account of every setting: what no mapper read is reported unless it is at its default."""

from onetrainer.util.config.onetrainer_json.findings import Ledger, View, leftovers

DEFAULTS = {"a": 1, "b": False, "nested": {"c": "x"}, "items": []}


def view(data):
    return View(data, DEFAULTS, Ledger())


def test_unread_settings_that_differ_from_their_default_are_refused_with_a_reason():
    config = view({"a": 2, "b": False, "nested": {"c": "y"}})
    leftovers(config, {}, {"a": "no such thing here"})
    assert [(item.key, item.why) for item in config.ledger.unsupported] == [
        ("a", "no such thing here"),
        ("nested.c", "onetrainer has no such setting"),
    ]


def test_read_and_skipped_settings_are_not_reported():
    config = view({"a": 2, "nested": {"c": "y"}})
    assert config["a"] == 2
    config.skip("nested")
    leftovers(config, {}, {})
    assert config.ledger.unsupported == []


def test_refuse_and_ignore_report_only_values_other_than_the_default():
    config = view({"a": 1, "b": True})
    config.refuse("a", "why a")
    config.ignore("b", "why b")
    assert config.ledger.unsupported == []
    assert [(item.key, item.value) for item in config.ledger.notes] == [("b", True)]


def test_list_items_are_walked_with_their_own_defaults_and_bookkeeping_keys_are_silent():
    config = view({"items": [{"k": 1, "uuid": "abc"}, {"k": 2}]})
    leftovers(config, {"items": {"k": 1, "uuid": ""}}, {})
    assert [item.key for item in config.ledger.unsupported] == ["items.1.k"]
