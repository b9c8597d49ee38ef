"""What-if studies: profile data, plan every variant, cost it on a cluster (``sim``), and
validate the predictions against real runs (``desmpi simulate``)."""
