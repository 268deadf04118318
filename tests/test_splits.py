import numpy as np
import pandas as pd
import pytest

from bench.data import Dataset, Features
from bench.errors import IntegrityError
from bench.splits import load_or_create_split, make_split, split_path


def test_seen_unseen_sizes_and_determinism(tiny_prism):
    a = make_split(tiny_prism, 3)
    b = make_split(tiny_prism, 3)
    c = make_split(tiny_prism, 4)
    n = len(a.users)
    assert a.n_seen == n // 2
    assert a.hash == b.hash and np.array_equal(a.seen, b.seen) and np.array_equal(a.order, b.order)
    assert a.hash != c.hash
    assert list(a.users) == sorted(a.users)


def test_group_halves_never_split_a_conversation(tiny_prism):
    sp = make_split(tiny_prism, 0)
    df = tiny_prism.pairs.assign(train=sp.train)
    assert (df.groupby("group")["train"].nunique() == 1).all()
    # per user: floor(n_groups / 2) train groups
    g = df.drop_duplicates("group").groupby("user")["train"].agg(["sum", "count"])
    assert (g["sum"] == g["count"] // 2).all()


def test_source_halves_follow_the_dataset(tiny_reddit):
    sp = make_split(tiny_reddit, 0)
    assert np.array_equal(sp.train, tiny_reddit.pairs["source_split"].to_numpy() == "train")


def test_supports_are_nested_and_ordered(tiny_reddit):
    sp = make_split(tiny_reddit, 1)
    m5 = sp.budget_mask(5, 5)
    m10 = sp.budget_mask(10, 10)
    assert (m5 <= m10).all()
    counts5 = np.bincount(sp.user_index[m5], minlength=len(sp.users))
    assert counts5.max() == 5
    # order is a permutation 0..n-1 of each user's train half
    for u in range(len(sp.users)):
        o = np.sort(sp.order[(sp.user_index == u) & sp.train])
        assert np.array_equal(o, np.arange(len(o)))
    assert (sp.order[~sp.train] == -1).all()


def test_seen_and_unseen_budgets_apply_separately(tiny_reddit):
    sp = make_split(tiny_reddit, 0)
    m = sp.budget_mask(10, 3)
    c = np.bincount(sp.user_index[m], minlength=len(sp.users))
    assert set(c[sp.seen]) == {10} and set(c[~sp.seen]) == {3}


def _toy(users, groups_per_user=4):
    rows = []
    for u in users:
        for g in range(groups_per_user):
            rows.append({"user": u, "group": f"{u}/g{g}", "pair_id": f"{u}/p{g}", "chosen": 0, "rejected": 1, "source_split": ""})
    pairs = pd.DataFrame(rows)
    return Dataset(
        name="toy",
        pairs=pairs,
        responses=pd.DataFrame({"prompt_id": [0, 0]}),
        features=Features(np.zeros((2, 3), dtype=np.float16)),
        fingerprint="toy",
    )


def test_a_users_halves_do_not_depend_on_other_users():
    full = _toy(["ann", "bob", "cy", "dee"])
    part = _toy(["ann", "dee"])
    sf, sp_ = make_split(full, 7), make_split(part, 7)
    for u in ("ann", "dee"):
        a = full.pairs.assign(t=sf.train, o=sf.order)[full.pairs["user"] == u][["pair_id", "t", "o"]].reset_index(drop=True)
        b = part.pairs.assign(t=sp_.train, o=sp_.order)[part.pairs["user"] == u][["pair_id", "t", "o"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)


def test_persisted_split_is_verified(tmp_path, tiny_prism):
    s1 = load_or_create_split(tmp_path, tiny_prism, 2)
    s2 = load_or_create_split(tmp_path, tiny_prism, 2)
    assert s1.hash == s2.hash
    path = split_path(tmp_path, tiny_prism, 2, 0.5)
    assert path.exists()
    # Tamper with the stored halves: the recorded hash no longer matches.
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    df = t.to_pandas()
    df.loc[0, "half"] = "test" if df.loc[0, "half"] == "train" else "train"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(t.schema.metadata), path)
    with pytest.raises(IntegrityError, match="does not match"):
        load_or_create_split(tmp_path, tiny_prism, 2)
