"""NodeAI Hub node: see DESIGN.md section 4 (built by a later issue)."""
