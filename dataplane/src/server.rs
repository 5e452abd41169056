//! Process concerns: listening, graceful shutdown, health and metrics endpoints.
