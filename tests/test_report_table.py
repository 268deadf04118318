"""Row labels of report tables."""

import json

import pandas as pd

from bench.reports.tables import variant_labels


def _rows(method, dataset, params, features="f"):
    return {"method": method, "dataset": dataset, "shots": pd.NA, "unseen_shots": pd.NA, "test_fraction": float("nan"),
            "params": json.dumps(params, sort_keys=True), "features": features}


def test_per_family_params_do_not_split_a_method():
    rows = pd.DataFrame([_rows("mrm", "prism", {"lr": 1e-3}), _rows("mrm", "reddit", {"lr": 5e-3})])
    assert variant_labels(rows).tolist() == ["mrm", "mrm"]


def test_several_params_or_feature_models_in_one_setting_are_qualified():
    rows = pd.DataFrame([
        _rows("mrm", "prism", {"lr": 1e-3, "rho": 0.5}),
        _rows("mrm", "prism", {"lr": 1e-3, "rho": 0.1}),
        _rows("bt", "prism", {}, "org/Skywork-V1"),
        _rows("bt", "prism", {}, "org/Skywork-V2"),
    ])
    assert variant_labels(rows).tolist() == ["mrm[rho=0.5]", "mrm[rho=0.1]", "bt (Skywork-V1)", "bt (Skywork-V2)"]


def test_a_tuned_method_is_one_row_whatever_each_split_chose():
    # METHOD@tuned picks its configuration per split on validation data; older results carry the
    # chosen parameters in their rows, and they must still read as one method (bench compare).
    rows = pd.DataFrame([
        _rows("mrm@tuned", "prism", {"lr": 1e-3, "rho": 0.5}),
        _rows("mrm@tuned", "prism", {"lr": 1e-2, "rho": 0.1}),
        _rows("mrm", "prism", {"lr": 1e-3, "rho": 0.5}),
        _rows("mrm", "prism", {"lr": 1e-3, "rho": 0.1}),
    ])
    assert variant_labels(rows).tolist() == ["mrm@tuned", "mrm@tuned", "mrm[rho=0.5]", "mrm[rho=0.1]"]
