"""What our containers share on top of kserve.ModelServer: one V2 request core, thin transports."""
