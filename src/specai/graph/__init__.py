"""The knowledge graph: nodes and edges per session, who may see them, the changelog feed and bootstrap."""
