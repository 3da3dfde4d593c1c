"""What the record tells people: incidents, delivery figures, owning teams, reports."""
