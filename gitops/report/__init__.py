"""What the record tells people: incidents, delivery figures, owning teams, reports."""

__all__: list[str] = []
