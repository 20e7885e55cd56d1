"""Per-example quantities from the two stored flows of eq. 1.3: each example's gradient
term and its norm, without autodiff."""
