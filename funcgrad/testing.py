"""Testing utilities (placeholder replaced in this change)."""
