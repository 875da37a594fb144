"""Model components: the encoder backbone, poolings, criteria and evidence heads, the CRF."""
