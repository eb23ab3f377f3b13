"""Generation out of the web server: the inference worker process (:mod:`.worker`) and the
server's handle on it (:mod:`.client`)."""
