"""What a pair's run dir holds, for both kinds of pair (bit-width and input-distribution)."""

KINDS = ("detrimental", "robust")
PAIR_FILE, NETWORK_FILE, POLICY_FILE = "pair.json", "network.pt", "policy.zip"
SPACES = {"bits": "a bit-width pair", "input": "an input-distribution pair"}
