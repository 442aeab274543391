"""The NewOaks API boundary: endpoint, response envelope, outcomes, and the client that calls it."""
