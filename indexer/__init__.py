"""NodeAI Hub indexer: see DESIGN.md section 4 (built by a later issue)."""
