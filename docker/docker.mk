# docker/docker.mk - the container image: build it, and test it for real.
#
#   make docker        docker build of the runtime image (needs a Docker engine)
#   make test-docker   installs buildah, podman, podman-compose and debootstrap, then
#                      tests/docker/test_docker.sh builds both image targets on a
#                      debootstrap base and runs the daemon and compose.yaml (as root,
#                      about 6 minutes; where containers cannot run it says so, exit 0)

.PHONY: docker test-docker
docker:
	docker build -f docker/Dockerfile -t normstat .

test-docker:
	$(Q)sh mk/deps.sh build docker
	$(Q)bash tests/docker/test_docker.sh
