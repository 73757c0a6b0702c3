"""`--workers N`: N protocol front ends sharing the ports, one engine owner fed through shared
memory (docs/workers.md). With one worker the predictor is today's single process, no IPC."""
