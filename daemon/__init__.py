"""The service: config, capture, the pipeline and its frame loop, sinks, v4l2, systemd
notify, the web page and remote mode, the CLI and doctor. It runs the engines (engines/)."""
