"""NodeAI Hub agents: see DESIGN.md section 4 (built by a later issue)."""
