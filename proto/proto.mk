# proto/proto.mk - libnsproto, the wire protocol (JSON and safetensors) shared by
# normstatd and the clients; static and shared, linked against libnscore and jansson.

PROTO_SOVERSION := 0
# proto/src by part: util/ (buffer, errors, float text, JSON loading),
# safetensors/ (the container), messages/ (reports, gradients, run configuration,
# answers); proto_internal.h beside them is shared by all three.
PROTO_SRCS := $(filter-out proto/src/util/%_avx2.c,$(wildcard proto/src/*/*.c))
ifneq ($(filter x86_64 i%86,$(ARCH)),)
PROTO_SRCS += proto/src/util/f32_format_avx2.c proto/src/util/f32_parse_avx2.c
# Only the AVX2 files are built for AVX2 (f32_format.c and f32_parse.c call
# them on AVX2 CPUs).
$(BUILD)/proto/src/util/f32_format_avx2.o $(BUILD)/proto/src/util/f32_parse_avx2.o: NS_ISA_FLAGS := -mavx2
endif
PROTO_OBJS := $(PROTO_SRCS:%.c=$(BUILD)/%.o)
PROTO_A    := $(BUILD)/lib/libnsproto.a
PROTO_SO   := $(BUILD)/lib/libnsproto.so
PROTO_PC   := $(BUILD)/lib/pkgconfig/libnsproto.pc

NS_INCLUDES += -Iproto/include

$(PROTO_OBJS): NS_EXTRA_CFLAGS = $(call pkg_cflags,jansson) -Iproto/src

$(PROTO_A): $(PROTO_OBJS)
	$(call make_static,$@,$^)

$(PROTO_SO).$(PROTO_SOVERSION): $(PROTO_OBJS) $(CORE_SO)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) -shared -Wl,-soname,libnsproto.so.$(PROTO_SOVERSION) $(NS_LDFLAGS) -o $@ \
	    $(PROTO_OBJS) -L$(BUILD)/lib -lnscore $(call pkg_libs,jansson) -lm

$(PROTO_SO): $(PROTO_SO).$(PROTO_SOVERSION)
	$(Q)ln -sf libnsproto.so.$(PROTO_SOVERSION) $@

$(PROTO_PC): proto/proto.mk Makefile
	$(call gen_pc,libnsproto,normstat wire protocol (report decoding, response encoding),jansson,-lnsproto -lnscore,-lm)

ALL_TARGETS += $(PROTO_A) $(PROTO_SO) $(PROTO_PC)
UNIT_LINK   := $(PROTO_A) $(UNIT_LINK)
UNIT_LIBS   += $(call pkg_libs,jansson)

.PHONY: install-proto uninstall-proto
install-proto: $(PROTO_A) $(PROTO_SO) $(PROTO_PC)
	$(INSTALL) -d $(DESTDIR)$(includedir)/normstat $(DESTDIR)$(libdir) $(DESTDIR)$(pkgconfigdir)
	$(INSTALL) -m 644 proto/include/normstat/*.h $(DESTDIR)$(includedir)/normstat/
	$(INSTALL) -m 644 $(PROTO_A) $(DESTDIR)$(libdir)/
	$(INSTALL) -m 755 $(PROTO_SO).$(PROTO_SOVERSION) $(DESTDIR)$(libdir)/
	ln -sf libnsproto.so.$(PROTO_SOVERSION) $(DESTDIR)$(libdir)/libnsproto.so
	$(INSTALL) -m 644 $(PROTO_PC) $(DESTDIR)$(pkgconfigdir)/
uninstall-proto:
	rm -f $(DESTDIR)$(includedir)/normstat/proto.h $(DESTDIR)$(includedir)/normstat/wire_errors.h \
	      $(DESTDIR)$(libdir)/libnsproto.a $(DESTDIR)$(libdir)/libnsproto.so \
	      $(DESTDIR)$(libdir)/libnsproto.so.$(PROTO_SOVERSION) $(DESTDIR)$(pkgconfigdir)/libnsproto.pc
	-rmdir $(DESTDIR)$(includedir)/normstat 2>/dev/null
INSTALL_TARGETS   += install-proto
UNINSTALL_TARGETS += uninstall-proto
