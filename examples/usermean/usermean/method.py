import numpy as np

from bench.api import Method, ParamCount


class UserMean(Method):
    name = "usermean"                         # the entry-point name; rows carry it
    kind = "personalized parameter"           # shown by `bench list`
    requires = frozenset({"features"})
    summary = "each user's mean preference direction, shrunk towards everyone's"
    test_params = {"prior": 2.0}              # tiny setting for the contract checks

    def __init__(self, prior: float = 5.0):   # store params only
        self.prior = prior

    def fit(self, train, ctx):                # seen users' train pairs within --shots
        self.ctx_ = ctx
        self.v_ = ctx.features.diff(train.chosen, train.rejected).mean(axis=0)
        return self

    def adapt(self, support):                 # every user's support; must not change fit
        d = self.ctx_.features.diff(support.chosen, support.rejected)
        sums = np.zeros((support.n_users, self.v_.size), dtype=np.float32)
        np.add.at(sums, support.user, d)      # support.user indexes support.users
        n = support.counts()[:, None]         # pairs per user; see also support.offsets()
        self.w_ = (self.prior * self.v_ + sums) / (self.prior + n)   # one row per user
        return self

    def score(self, queries):                 # margins score(a) - score(b); no labels
        f, out = self.ctx_.features, np.empty(len(queries), dtype=np.float32)
        for s in range(0, len(queries), 4096):  # in chunks: memory stays small
            i = slice(s, s + 4096)
            d = f.diff(queries.a[i], queries.b[i])
            out[i] = np.einsum("nd,nd->n", d, self.w_[queries.user[i]])
        return out

    def param_count(self):                    # the formula: shared + per_user x users
        return ParamCount(shared=self.ctx_.features.dim, per_user=self.ctx_.features.dim)

    def trained_param_count(self):            # counted from what was fitted
        return ParamCount(shared=self.v_.size, per_user=self.w_.shape[1])
