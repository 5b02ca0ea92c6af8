"""Bootstrap: scan a repository (bounded, no symlinks followed) into a GraphPlan of components, docs and patterns."""

from specai.graph.bootstrap.planner import scan_repository
from specai.graph.bootstrap.rules import BOOTSTRAP_SOURCE, MAX_DOCS, MAX_ENTRIES, MAX_NODES, ROOT_KEY

__all__ = ["BOOTSTRAP_SOURCE", "MAX_DOCS", "MAX_ENTRIES", "MAX_NODES", "ROOT_KEY", "scan_repository"]
