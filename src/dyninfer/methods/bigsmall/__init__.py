"""Big/little networks (NAS for dynamic inference, section 3.4): the little head of a co-trained pair answers;
a router decides whether the big head must look."""

from .method import BigSmall, LearnedRouterScore

__all__ = ["BigSmall", "LearnedRouterScore"]
