"""The benchmark harness: the proxy side by side with nginx, and its token path (`bench/run`)."""
