# Thin wrapper around CMake; the real build is CMakeLists.txt.
#   make            build into build/ (build/vmsnap, build/libvmsnap.{so,a})
#   make deps       install the Debian packages the build, tests and demo need
#   make check      the whole test suite (ctest); SANITIZE=1 for ASan+UBSan in build-san/
#   make demo       run the demo on the local platform
#   make bench      run the benchmarks in tests/bench and print their figures
#   make install    install (PREFIX=/usr/local, DESTDIR=...)
#   make deb        a Debian package (build-deb/vmsnap_VERSION_ARCH.deb)
#   make image      the controller's container image from Debian packages (tools/image.sh)
#   make check-image  build the image and run its controller against the local platform
BUILD ?= build
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
ifeq ($(SANITIZE),1)
BUILD := build-san
CMAKE_FLAGS += -DVMSNAP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
endif
ifeq ($(WERROR),1)
CMAKE_FLAGS += -DVMSNAP_WERROR=ON
endif

.PHONY: all build deps check demo bench install clean configure image check-image deb

all: build

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)

configure: $(BUILD)/CMakeCache.txt

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

deps:
	@sh tools/deps.sh

check: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300 || { sh $(CURDIR)/tools/failures.sh .; exit 1; }

demo: deps build
	@sh tools/demo.sh $(BUILD)

bench: build
	@sh tests/bench/run.sh $(BUILD)

# PREFIX is always the one installed to (the build directory may have been
# configured for another: the installed tree finds its parts relative to itself)
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

# the .deb: a Release build for /usr of its own (build-deb/), then CPack
deb:
	cmake -S . -B build-deb -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DVMSNAP_BUILD_TESTS=OFF >/dev/null
	cmake --build build-deb -j $(JOBS)
	cd build-deb && cpack -G DEB
	@ls build-deb/*.deb

image:
	@sh tools/deps.sh image
	@sh tools/image.sh $(IMAGE)

check-image: build image
	VMSNAP_BUILD_DIR=$(abspath $(BUILD)) VMSNAP_SOURCE_DIR=$(CURDIR) $(BUILD)/vmsnap --path tests/harness tests/image/image_spec.lua

clean:
	rm -rf build build-san build-image build-deb
