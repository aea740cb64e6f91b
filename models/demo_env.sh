# Shared set-up of the demo model's scripts (sourced by train_demo.sh and evaluate_demo.sh):
# the Python that runs ctlesion (PYTHON, default python3), `ctlesion` as `python -m ctlesion`,
# and the number of CPUs this process may use.
python=${PYTHON:-python3}
ctlesion() { "$python" -m ctlesion "$@"; }
cpus=$("$python" -c "import os; print(len(os.sched_getaffinity(0)))")
