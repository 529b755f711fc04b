"""Train input-aware edge-cloud routers for vision-language models."""
