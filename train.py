"""Train and evaluate a ResNet.

    python train.py --config configs/cifar10_resnet20.py --workdir runs/r20
    python train.py --config configs/cifar10_quick.py --workdir runs/q \
        --config.data.path=../shared/data/cifar10-jpeg --config.num_epochs=10
    python train.py --config configs/cifar10_quick.py --workdir runs/q --mode=eval --step=best
"""

from resnet_jax.errors import stop_while_starting

stop_while_starting("train.py")  # a SIGTERM or Ctrl-C during the imports and the config file: one line

import signal  # noqa: E402

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resnet_jax import parallel  # noqa: E402
from resnet_jax.errors import ConfigError, exit_on_user_error, run_app  # noqa: E402
from resnet_jax.evaluate import evaluate_command  # noqa: E402
from resnet_jax.training.loop import train_and_evaluate  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file of configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config are written.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate), or only evaluate a checkpoint.")
flags.DEFINE_string("step", "latest", 'With --mode=eval: "latest", "best" or a step number.')
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here a Ctrl-C is the run's (training/stops.py)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    with exit_on_user_error():
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments {argv[1:]}: every option is a --flag (python train.py --help)")
        parallel.initialize_distributed()
        if FLAGS.mode == "train":
            try:  # SIGTERM: `stop_while_starting`'s until training's own (training/stops.py) takes it
                train_and_evaluate(FLAGS.config, FLAGS.workdir)
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the run's work is over: a SIGTERM while it exits
            return
        evaluate_command(FLAGS.config, FLAGS.workdir, FLAGS.step)


if __name__ == "__main__":
    run_app(main, config_file=True)
