# core/core.mk - libnscore, the SIMD statistics core (static and shared).

CORE_SOVERSION := 0
CORE_AVX2_SRCS := core/src/kernel_avx2.c core/src/kernel_avx2_step.c
CORE_SRCS := $(filter-out $(CORE_AVX2_SRCS),$(wildcard core/src/*.c))
ifneq ($(filter x86_64 i%86,$(ARCH)),)
CORE_SRCS += $(CORE_AVX2_SRCS)
# Only the AVX2 files are built for AVX2; the dispatcher keeps baseline flags.
$(CORE_AVX2_SRCS:%.c=$(BUILD)/%.o): NS_ISA_FLAGS := -mavx2 -mfma
endif
CORE_OBJS := $(CORE_SRCS:%.c=$(BUILD)/%.o)
CORE_A    := $(BUILD)/lib/libnscore.a
CORE_SO   := $(BUILD)/lib/libnscore.so
CORE_PC   := $(BUILD)/lib/pkgconfig/libnscore.pc
CORE_LIBS := -lm

NS_INCLUDES += -Icore/include

$(CORE_A): $(CORE_OBJS)
	$(call make_static,$@,$^)

$(CORE_SO).$(CORE_SOVERSION): $(CORE_OBJS)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) -shared -Wl,-soname,libnscore.so.$(CORE_SOVERSION) $(NS_LDFLAGS) -o $@ $^ $(CORE_LIBS)

$(CORE_SO): $(CORE_SO).$(CORE_SOVERSION)
	$(Q)ln -sf libnscore.so.$(CORE_SOVERSION) $@

# gen_pc(name, description, requires.private, libs, libs.private)
define gen_pc
	@mkdir -p $(dir $@)
	$(Q)printf '%s\n' 'prefix=$(PREFIX)' 'exec_prefix=$${prefix}' 'libdir=$(libdir)' \
	    'includedir=$(includedir)' '' 'Name: $(1)' 'Description: $(2)' \
	    'Version: $(NS_VERSION)' 'Requires.private: $(3)' 'Cflags: -I$${includedir}' \
	    'Libs: -L$${libdir} $(4)' 'Libs.private: $(5)' > $@
endef

NS_VERSION := $(shell sed -n 's/^\#define NS_VERSION_STRING "\(.*\)"/\1/p' core/include/normstat/core.h)

$(CORE_PC): core/core.mk Makefile
	$(call gen_pc,libnscore,normstat statistics core (BatchNorm moments, EMA, PreciseBN),,-lnscore,-fopenmp -lm)

ALL_TARGETS += $(CORE_A) $(CORE_SO) $(CORE_PC)
UNIT_LINK   := $(CORE_A)

.PHONY: install-core uninstall-core
install-core: $(CORE_A) $(CORE_SO) $(CORE_PC)
	$(INSTALL) -d $(DESTDIR)$(includedir)/normstat $(DESTDIR)$(libdir) $(DESTDIR)$(pkgconfigdir)
	$(INSTALL) -m 644 core/include/normstat/*.h $(DESTDIR)$(includedir)/normstat/
	$(INSTALL) -m 644 $(CORE_A) $(DESTDIR)$(libdir)/
	$(INSTALL) -m 755 $(CORE_SO).$(CORE_SOVERSION) $(DESTDIR)$(libdir)/
	ln -sf libnscore.so.$(CORE_SOVERSION) $(DESTDIR)$(libdir)/libnscore.so
	$(INSTALL) -m 644 $(CORE_PC) $(DESTDIR)$(pkgconfigdir)/
uninstall-core:
	rm -f $(DESTDIR)$(includedir)/normstat/core.h $(DESTDIR)$(includedir)/normstat/errors.h \
	      $(DESTDIR)$(includedir)/normstat/export.h \
	      $(DESTDIR)$(libdir)/libnscore.a $(DESTDIR)$(libdir)/libnscore.so \
	      $(DESTDIR)$(libdir)/libnscore.so.$(CORE_SOVERSION) $(DESTDIR)$(pkgconfigdir)/libnscore.pc
	-rmdir $(DESTDIR)$(includedir)/normstat 2>/dev/null
INSTALL_TARGETS   += install-core
UNINSTALL_TARGETS += uninstall-core
