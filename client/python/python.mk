# client/python/python.mk - the Python client as a wheel, and installed for the system's Python.
#
#   make wheel      $(BUILD)/normstat-VERSION-py3-none-any.whl (pure Python, built
#                   offline by client/python/backend/build_backend.py)
#   make install    also puts the package where Debian's python3 finds it:
#                   $(pythondir), /usr/lib/python3/dist-packages for PREFIX=/usr,
#                   $(PREFIX)/lib/python3.X/dist-packages otherwise (on sys.path
#                   for PREFIX=/usr/local)

PY_DIR      := client/python
PY_VERSION  := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' $(PY_DIR)/pyproject.toml)
PY_WHEEL    := $(BUILD)/normstat-$(PY_VERSION)-py3-none-any.whl
PY_SOURCES  := $(shell find $(PY_DIR)/normstat -name '*.py') $(PY_DIR)/pyproject.toml \
               $(PY_DIR)/README.md LICENSE $(PY_DIR)/backend/build_backend.py
# Asked only when a recipe needs it: python3 may be installed by `make deps` first.
python_version = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pythondir ?= $(if $(filter /usr,$(PREFIX)),$(PREFIX)/lib/python3/dist-packages,$(PREFIX)/lib/python$(python_version)/dist-packages)

.PHONY: wheel install-python uninstall-python
wheel: $(PY_WHEEL)

$(PY_WHEEL): $(PY_SOURCES)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  WHEEL   $@")
	$(Q)PYTHONDONTWRITEBYTECODE=1 $(PYTHON) $(PY_DIR)/backend/build_backend.py wheel $(@D) >/dev/null

# A pure-Python wheel installs by unpacking it into the target directory.
install-python: $(PY_WHEEL)
	$(INSTALL) -d $(DESTDIR)$(pythondir)
	$(PYTHON) -m zipfile -e $(PY_WHEEL) $(DESTDIR)$(pythondir)
uninstall-python:
	rm -rf $(DESTDIR)$(pythondir)/normstat $(DESTDIR)$(pythondir)/normstat-$(PY_VERSION).dist-info
INSTALL_TARGETS   += install-python
UNINSTALL_TARGETS += uninstall-python
