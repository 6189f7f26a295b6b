# The two set-up commands of README.md. Both install what they need first.
.PHONY: demo test install

install:
	@bash infra/install.sh

demo: install
	.venv/bin/botledger --data-dir .botledger up --demo

test: install
	.venv/bin/python -m pytest -q
