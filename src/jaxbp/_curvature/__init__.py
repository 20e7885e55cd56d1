"""Curvature through the handwritten gradient: Hessian- and Gauss-Newton-vector products."""
