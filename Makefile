# Thin wrappers; the scripts are the real commands and need only bash.
.PHONY: test demo ci
test:
	./scripts/test.sh
demo:
	./scripts/demo.sh
ci:
	bash .ci/run
