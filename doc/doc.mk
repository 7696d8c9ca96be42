# doc/doc.mk - man pages: normstatd(8) generated from server/src/base/options.def, normstat(1) written by hand.

MAN8_PAGE := $(BUILD)/doc/normstatd.8
MAN1_PAGE := doc/normstat.1

$(MAN8_PAGE): doc/gen-docs.py server/src/base/options.def core/include/normstat/core.h
	$(if $(Q),@echo "  GEN     $@")
	$(Q)$(PYTHON) doc/gen-docs.py man $@

ALL_TARGETS += $(MAN8_PAGE)

.PHONY: install-man uninstall-man
install-man: $(MAN8_PAGE)
	$(INSTALL) -d $(DESTDIR)$(mandir)/man8 $(DESTDIR)$(mandir)/man1
	$(INSTALL) -m 644 $(MAN8_PAGE) $(DESTDIR)$(mandir)/man8/normstatd.8
	$(INSTALL) -m 644 $(MAN1_PAGE) $(DESTDIR)$(mandir)/man1/normstat.1
uninstall-man:
	rm -f $(DESTDIR)$(mandir)/man8/normstatd.8 $(DESTDIR)$(mandir)/man1/normstat.1
INSTALL_TARGETS   += install-man
UNINSTALL_TARGETS += uninstall-man
