# Sourced by the GPU scripts (gpu_check.sh, gpu_serial_check.sh), from the repository root,
# with PYTHON set: where diffusers or simpy cannot be found, installs the wheels carried in
# .whl/ (benchmarks/gpu_wheels.sh fills it) into $DITSIM_SITE (default /tmp/site) and puts
# it on PYTHONPATH. Returns 1 when the carried wheels do not install or still leave one
# missing; with no .whl/ it warns and returns 0 (the stages that need them fail, each said).
SITE=${DITSIM_SITE:-/tmp/site}

missing() {  # true when a package the scripts need cannot be found (found, not imported: fast)
  "$PYTHON" -c 'import importlib.util as u, sys
sys.exit(0 if any(u.find_spec(m) is None for m in ("diffusers", "simpy")) else 1)'
}

install_carried_wheels() {
  missing || return 0
  if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing the carried wheels: $(cd .whl && echo *.whl)"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" .whl/*.whl; then
      echo "error: the wheels in .whl/ did not install into $SITE" >&2
      return 1
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if missing; then
      echo "error: diffusers or simpy still missing after installing .whl/" >&2
      return 1
    fi
  else
    echo "warning: diffusers or simpy is missing and no .whl/ was carried" \
         "(bash benchmarks/gpu_wheels.sh fills it); the stages that need them will fail" >&2
  fi
}
