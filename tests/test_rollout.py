"""`sam rollout`'s parts that need no cluster: its steps, its checks (each failure names itself with its figure
and limit), and the config file naming the promoted champion with its comments kept. The rollouts themselves,
on a `ray start` cluster under load, are in tests/test_rollout_cluster.py."""

import pytest
import yaml

from sam import SamError
from sam.rollout import Checks, judge, name_champion, parse_steps

FIGURES = {"requests": 200, "errors": 0, "error_rate": 0.0, "p50_ms": 4.0, "p99_ms": 19.03, "agreement": 0.9}


def test_steps_rise_to_at_most_100_with_an_optional_shadow_first():
    assert parse_steps("shadow,5,25,50,100") == ["shadow", 5, 25, 50, 100]
    for bad in ("5,5", "50,25", "0,10", "10,150", "ten"):
        with pytest.raises(SamError, match="--steps"):
            parse_steps(bad)


@pytest.mark.parametrize("change, checks, named", [
    ({}, Checks(), None),
    ({"requests": 3}, Checks(), "min-requests: 3 answers < 10"),
    ({"errors": 4, "error_rate": 0.02}, Checks(), "max-error-rate: 2.00% > 1.00%"),
    ({}, Checks(max_p99_ms=10), "max-p99-ms: p99 19.03 ms > 10 ms"),
    ({}, Checks(min_agreement=0.95), "min-agreement: 90.0% < 95.0%"),
    ({"agreement": None}, Checks(min_agreement=0.95), None),  # no shadow traffic in a split step: nothing to judge
])
def test_each_failed_check_is_named_with_its_figure_and_limit(change, checks, named):
    assert judge({**FIGURES, **change}, checks) == named


def test_the_config_names_the_promoted_champion_and_keeps_its_comments(tmp_path):
    shipped = (tmp_path / "serve_config.yaml")
    shipped.write_text("applications:\n- name: sam\n  import_path: serve_app:app\n  args:\n"
                       "    model_dir: models/old   # the champion\n    quantize: false\n")
    name_champion(shipped, {"name": "sam"}, "models/old", "/models/new")
    assert "    model_dir: /models/new   # the champion\n" in shipped.read_text()
    assert yaml.safe_load(shipped.read_text())["applications"][0]["args"] == {"model_dir": "/models/new", "quantize": False}
