import numpy
VALUE = numpy.__version__
