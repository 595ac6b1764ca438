"""Big/little networks (NAS for dynamic inference, section 3.4): the little head of a co-trained pair answers;
a router decides whether the big head must look."""

from .method import BigSmall, LearnedRouterScore, read_pair
from . import figures  # noqa: E402,F401  (registers the big/little figures)

__all__ = ["BigSmall", "LearnedRouterScore", "figures", "read_pair"]
