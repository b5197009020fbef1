"""Choices of ``jungle report`` that its command line shows in ``--help``; kept apart from
:mod:`stack.report` so that building the command line imports none of the report code."""

from __future__ import annotations

#: the page sizes offered (cards per page); the largest bounds what a page renders.
PAGE_SIZES: tuple[int, ...] = (24, 60, 120, 240)
