"""``desmpi bench``: data conversion and reads, collectives, compute rates, training steps."""
