"""The team's own tools (evaluation, benchmarks, soak): they use the product, the product never
imports them. See __main__.py."""
