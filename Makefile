# The two set-up commands of README.md. Both install what they need first.
.PHONY: demo test install

install:
	@bash infra/install.sh

demo: install
	.venv/bin/botledger up --demo --data-dir .botledger

test: install
	.venv/bin/python -m pytest -q
