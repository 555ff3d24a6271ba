"""Zero-shot editing baselines on the frozen base: FlowEdit and SDEdit (METHOD.md §6)."""
